"""Task packages: a domain's data, its tokenizer and its metrics, each in a subpackage (e.g. `molecules`)."""
