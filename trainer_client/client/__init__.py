"""Client library for the STAR scorer service. Importing it loads neither torch nor transformers.

async with AsyncScorerClient("scorer-0:50051,scorer-1:50051") as client:
    scores = await client.score_many(requests)

with ScorerClient("localhost:50051") as client:
    print(client.info().fingerprint)
"""

from scorer_server.errors import InvalidRequest
from trainer_client.client.aio import AsyncScorerClient
from trainer_client.client.config import ClientConfig
from trainer_client.client.errors import ScorerCallError
from trainer_client.client.sync import ScorerClient

__all__ = ["AsyncScorerClient", "ClientConfig", "InvalidRequest", "ScorerCallError", "ScorerClient"]
