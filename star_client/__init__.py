"""Client library for the STAR scorer service. Importing it loads neither torch nor transformers.

async with AsyncScorerClient("scorer-0:50051,scorer-1:50051") as client:
    scores = await client.score_many(requests)

with ScorerClient("localhost:50051") as client:
    print(client.info().fingerprint)
"""

from star_client.aio import AsyncScorerClient
from star_client.config import ClientConfig
from star_client.errors import ScorerCallError
from star_client.moderation import ModerationLost, ModerationSession
from star_client.sync import ScorerClient
from star_contract.errors import InvalidRequest

__all__ = [
    "AsyncScorerClient",
    "ClientConfig",
    "InvalidRequest",
    "ModerationLost",
    "ModerationSession",
    "ScorerCallError",
    "ScorerClient",
]
