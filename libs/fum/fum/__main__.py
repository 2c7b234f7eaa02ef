"""``python -m fum module:function``: serve a handler function over FUM."""

from fum.handler import main

main()
