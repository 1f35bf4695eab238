"""Well profiles: the model's (every well from all its cells) and the non-learned aggregations."""
