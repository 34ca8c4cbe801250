"""What central and edge both need and that is not RPC plumbing.

``config`` holds the typed configuration (the spec's YAML keys),
``errors`` the domain error tree, ``model`` the plain domain records and
``canonical`` the checksums both sides must compute identically.
"""
