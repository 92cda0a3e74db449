"""Operations: metrics, the HTTP endpoint, status documents and tables, logs."""
