import sys

from reviosa.cli import main

sys.exit(main())
