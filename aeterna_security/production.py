"""Secure by default: the settings central and an edge refuse to start with outside development mode.

Two settings make a running service trust anybody: no batch-signing key
(central would accept, and an edge would sign with, the public development key
in ``aeterna_security.keys``) and ``sync.auth.method: none`` (callers name
themselves). A laptop, the demo and the tests need exactly these, so they stay
available, but only when asked for by name: ``development: true`` in the
configuration (``AETERNA_DEVELOPMENT=true``) or ``--development`` on the
command line. Anywhere else the process refuses to start, before it starts
anything (no PostgreSQL, no Redis), with one paragraph naming the keys to set.

The rule lives here once; ``central_svc.__main__`` and ``edge_svc.server``
call ``refusal`` at process start and exit with status 2 when it returns a
message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from aeterna_shared.config.model import AeternaConfig

Role = Literal["central", "edge"]

EXIT_REFUSED = 2
"""Exit status of a process that refused to start on development-only settings (a usage error)."""

DEVELOPMENT_HELP = (
    "development mode (same as development: true): allow the public development signing key and "
    "sync.auth.method none; for local setups, the demo and tests only"
)
"""Help text of the ``--development`` flag of ``aeterna central`` and ``aeterna edge``."""

_REAL_METHODS = "apiKey, oauth2, serviceAccount or mtls"


def development_only_settings(config: AeternaConfig, role: Role) -> list[str]:
    """What in ``config`` is safe only in development mode for ``role``, one phrase each (empty: nothing)."""
    problems: list[str] = []
    signing = config.sync.signing
    if role == "central" and not signing.keys_file:
        problems.append(
            "sync.signing.keysFile is not set, so central would accept batches signed with the public development key"
        )
    # An edge that never syncs never signs: its key does not matter.
    if role == "edge" and config.sync.enabled and not (signing.key or signing.key_file):
        problems.append(
            "neither sync.signing.key nor sync.signing.keyFile is set, so the edge would sign its batches "
            "with the public development key"
        )
    if config.sync.auth.method == "none":
        problems.append("sync.auth.method is none, so every caller could claim any identity")
    return problems


def refusal(config: AeternaConfig, role: Role) -> str | None:
    """The message a process of ``role`` refuses to start with, or None when it may start.

    Development mode allows everything (the existing warnings still say what is
    unsafe); otherwise any development-only setting is refused.
    """
    if config.development:
        return None
    problems = development_only_settings(config, role)
    if not problems:
        return None
    keys = "sync.signing.keysFile" if role == "central" else "sync.signing.keyFile (or sync.signing.key)"
    return (
        f"error: {role} refuses to start outside development mode: {'; '.join(problems)}. "
        f"For a deployment, set {keys} and sync.auth.method ({_REAL_METHODS}, with its credentials). "
        "For a local setup, the demo or tests, ask for development mode explicitly: --development on the "
        "command line or development: true in the configuration (env AETERNA_DEVELOPMENT=true)."
    )


def role_refusal(config: AeternaConfig, role: Role, source: str | None) -> str | None:
    """The message a process of ``role`` refuses a configuration written for the other role with, or None.

    ``deploymentMode: edge`` is refused by central and ``central`` by an edge;
    ``hybrid`` (the default) is accepted by both. ``source`` is the config file
    (None: defaults and environment only).
    """
    if config.deployment_mode in (role, "hybrid"):
        return None
    where = source if source else "the configuration (AETERNA_DEPLOYMENT_MODE)"
    return (
        f"error: {where} has deploymentMode: {config.deployment_mode}, which is not for {role}: "
        f"'aeterna {role}' runs only with deploymentMode {role} or hybrid. "
        f"Start it with 'aeterna {config.deployment_mode} --config {source or '...'}', "
        f"or pass {role}'s configuration."
    )
