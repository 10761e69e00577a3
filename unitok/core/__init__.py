"""What every layer uses and nothing in unitok is imported by: the user-error exception
(`UnitokError`, one line on the command line), typed YAML configs that report every wrong field
with its path (`load_config`, `from_dict`, `config_hash`), and writes a kill cannot leave half done
(`write_text_atomic`)."""
