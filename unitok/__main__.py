import sys

from unitok.cli import main

sys.exit(main())
