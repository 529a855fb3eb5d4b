"""Converters from the raw datasets (``../shared/data/<dataset>/raw``) to RecBole atomic files.

Each converter is a function ``convert_<name>(raw_dir, out_dir, yaml_dir=None, ...) -> dict`` that
writes ``out_dir/<name>/<name>.<suffix>`` and the dataset yaml beside them, ``out_dir/<name>/<name>.yaml``
(where the plugin's ``Config`` finds it for ``data_path=out_dir`` from any working directory; a copy into
``yaml_dir`` when given, none at all with ``yaml_dir=False``), and returns the counts it wrote. Command line: ``python -m recbole_pmtrec.data.convert NAME --raw RAW --out OUT``.
Conventions and counts: ``docs/DATASETS.md``.
"""

from __future__ import annotations

from .ali_mtl import convert_ali_ccp, convert_aliexpress
from .amazon_2018 import convert_amazon_2018
from .amazon_hin import convert_amazon_hin
from .census_income import convert_census_income
from .epinions import convert_epinions
from .lastfm import convert_lastfm
from .office import convert_office

#: dataset name on the command line -> (converter, one-line description)
CONVERTERS = {
    "epinions": (
        convert_epinions,
        "Epinions (rating.mat + trustnetwork.mat): .inter, .item (category), .net (directed trust)",
    ),
    "office": (
        convert_office,
        "Amazon Office, GraphAU split (train/val/test.txt): office.{train,valid,test}.inter",
    ),
    "amazon-2018": (
        convert_amazon_2018,
        "Amazon 2018 <Category>_5 + meta_<Category> (Magazine_Subscriptions, Video_Games): "
        ".inter, .item (category path, brand), .coview, .cobuy",
    ),
    "amazon-hin": (
        convert_amazon_hin,
        "Amazon HIN subset (user_item/item_view/item_category/item_brand.dat): "
        ".inter, .item (category, brand), .coview (shared view nodes)",
    ),
    "lastfm": (
        convert_lastfm,
        "HetRec 2011 Last.fm (user_artists/user_friends/user_taggedartists/tags.dat): "
        ".inter (weight), .item (tags), .net (undirected friends)",
    ),
    "census-income": (
        convert_census_income,
        "UCI Census-Income KDD (official train/test .gz): census-income.{train,valid,test}.inter, "
        "labels income, marital",
    ),
    "aliexpress": (
        convert_aliexpress,
        "AliExpress (train.csv/test.csv or the samples): aliexpress.{train,valid,test}.inter, "
        "labels click, conversion",
    ),
    "ali-ccp": (
        convert_ali_ccp,
        "Ali-CCP (ali_ccp_{train,val,test}.csv or the samples): ali-ccp.{train,valid,test}.inter, "
        "labels click, purchase",
    ),
}

__all__ = [
    "CONVERTERS",
    "convert_ali_ccp",
    "convert_aliexpress",
    "convert_amazon_2018",
    "convert_amazon_hin",
    "convert_census_income",
    "convert_epinions",
    "convert_lastfm",
    "convert_office",
]
