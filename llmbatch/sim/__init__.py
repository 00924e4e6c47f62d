"""The simulated provider: an OpenAI-compatible server for tests, benchmarks and ``run --simulate``.

A ready subpackage: it imports nothing from the rest of llmbatch (only aiohttp and orjson), so it can
be lifted out, and nothing llmbatch does can make it agree with llmbatch by accident. The contract is
in :mod:`llmbatch.sim.server`.
"""

from llmbatch.sim.server import SimConfig, Simulator, SimulatorThread, parse_duration_s, serve_forever

__all__ = ["SimConfig", "Simulator", "SimulatorThread", "parse_duration_s", "serve_forever"]
