"""``ray.cloudpickle``: the cloudpickle that anyray serializes with, for programs that import it from Ray."""

from cloudpickle import *  # noqa: F403 - this module is the library under Ray's name
from cloudpickle import CloudPickler, dump, dumps, load, loads  # noqa: F401
