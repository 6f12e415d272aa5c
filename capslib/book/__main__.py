"""``python -m capslib.book build ...``: see :mod:`capslib.book.build`."""
import sys

from .build import main

sys.exit(main())
