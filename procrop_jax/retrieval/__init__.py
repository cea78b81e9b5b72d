"""Retrieval of professional compositions.

  embedding.py  reference tokens and composition embeddings from backbone features
  index.py      ScaNN (tree + asymmetric hashing + re-ranking, or brute force) and exact search
  database.py   the on-disk / in-memory database of photos: ids, tokens, embeddings, index
  build.py      `build_index(config, workdir)` (main --mode=build_index) and `load_database`
  neighbors.py  cached neighbours of training examples, token gathering, inference Retriever
  references.py `References`: the neighbours' tokens added to training and evaluation batches
"""
