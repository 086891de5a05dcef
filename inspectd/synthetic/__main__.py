"""`python -m inspectd.synthetic --out DIR ...`: write a synthetic button data set."""

from inspectd.synthetic.dataset import main

raise SystemExit(main())
