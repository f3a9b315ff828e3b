"""Analysis of logged runs: MLflow runs into tidy pandas DataFrames."""
