"""Who may talk to whom: TLS, SPKI pins, certificates, batch-signing keys, and the caller's identity.

No interceptor lives here; ``interceptors.auth`` and ``interceptors.chain``
use these to authenticate calls, and ``aeterna_client`` to pin central.
"""
