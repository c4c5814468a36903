"""The WeChat platform simulator: a real HTTP server standing in for api.weixin.qq.com."""
from .state import SimulatorState
from .wechat import create_simulator_app, state_key

__all__ = ["SimulatorState", "create_simulator_app", "state_key"]
