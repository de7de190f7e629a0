"""The jobs as library calls: extend (data -> train -> export -> evaluation -> MLflow), its preflight, the toy base."""
