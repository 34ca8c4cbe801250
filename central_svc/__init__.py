"""Aeterna central: the write authority edges sync to (sessions, vectors, episodes, decisions, policies)."""
