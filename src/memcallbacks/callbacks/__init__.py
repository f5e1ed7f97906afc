"""Lightning callbacks of memcallbacks: thin glue around :mod:`memcallbacks.metrics`.

Modules are imported lazily through :mod:`memcallbacks`; import a callback from there.
"""
