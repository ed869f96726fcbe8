"""A reward for tests, named by dotted path (`tests.rl.toy_rewards:vowel_share`): it varies over
an untrained policy's random replies, so advantages and losses are not all zero."""


def vowel_share(completion: str, meta: dict, *, length: int) -> float:
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(len(letters), 1)
