"""What central and edge both need and that is not RPC plumbing.

``config`` holds the typed configuration (the spec's YAML keys), ``errors``
the domain error tree, ``limits`` the sizes and ranges every store can hold,
``wire`` the canonical encodings and signatures both sides must compute
identically, ``process_lock`` the owned data directories and child servers,
``logs`` the log setup.
"""
