"""IP -> country / region / city / ASN lookups from MaxMind-format databases."""
