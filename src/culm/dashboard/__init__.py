"""The dashboard: a web page served by culm itself at ``/dashboard``, and ``/docs``.

Everything it needs ships in the package (``static/``): hand-written ES modules and CSS, no
build step, no Node and no CDN at run time. The page is a client of the public HTTP API (the
same routes, streams and errors as any other client); the only routes of its own are the page,
its assets and the sign-in cookie (:mod:`culm.api.cookie`).
"""
