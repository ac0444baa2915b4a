"""Wire codecs: unsigned varints and a small, bounded protobuf reader/writer."""
