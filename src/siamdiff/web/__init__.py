"""``siamdiff serve``: a local web page and REST API over the library. ``siamdiff.web.app`` needs the ``web``
extra (FastAPI, python-multipart, uvicorn); the catalog of served models does not."""
