"""Value types and codecs: keys, endpoints, address lists, Node annotations, errors."""
