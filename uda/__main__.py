import sys

from uda.cli import main

sys.exit(main())
