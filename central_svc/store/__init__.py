"""PostgreSQL adapters of central's ports, the embedded server launcher and the migrations."""
