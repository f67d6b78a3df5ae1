"""The PostgreSQL source: logical replication (pgoutput) into change records."""
