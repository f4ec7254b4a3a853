"""A call, from its callbacks to its record: parsing, intake, the Exotel client, enrichment."""
