"""What every layer uses; it imports nothing else of unitok. The user-error exception
(`UnitokError`, one line on the command line); typed YAML configs that report every wrong field
with its path (`Config`, `bounded`, `load_config`, `from_dict`, `config_hash`); writes a kill cannot
leave half done (`write_text_atomic`); devices and the processes of a run (`runtime.py`)."""
