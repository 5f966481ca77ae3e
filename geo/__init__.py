"""IP -> country / region / city / ASN lookups from MaxMind-format databases."""

from geo.reader import EMPTY, GeoInfo, GeoReader, open_geo

__all__ = ["EMPTY", "GeoInfo", "GeoReader", "open_geo"]
