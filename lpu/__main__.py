import sys

from lpu.cli import main

sys.exit(main())
