"""The MCR video agent: a shared context of typed entries, retrieval tools and the loop
(docs/agent.md)."""
