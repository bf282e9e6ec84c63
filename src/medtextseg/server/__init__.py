"""``medtextseg serve``: an HTTP server (FastAPI + uvicorn) over one loaded :class:`~medtextseg.api.load_model` model.

* :mod:`~medtextseg.server.app`: the application (routes, bearer token, error responses) and :func:`serve`;
* :mod:`~medtextseg.server.uploads`: the streamed multipart upload, bounded in size, into server-named files;
* :mod:`~medtextseg.server.work`: one worker over a bounded queue, the jobs and what one request runs.

It sits at the level of :mod:`medtextseg.cli` and :mod:`medtextseg.api`: it imports the inference package, never
the reverse. FastAPI, uvicorn and python-multipart come with the ``serve`` extra (``pip install -e .[serve]``).
"""
