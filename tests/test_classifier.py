"""FusedClassifier: a scikit-learn estimator over texts, on tiny random embedders (real forward passes)."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score

from lafusion_st import EmbedderSpec, FusedClassifier, HadamardResidualHead, LogisticHead, MLPHead, build_fused_model
from lafusion_st.embedding_cache import EmbeddingCache

POSITIVE = ["good", "great", "fun", "loved"]
NEGATIVE = ["bad", "terrible", "boring", "hated"]
FRAMES = ["the movie was {}", "i {} this film", "really {} story", "a {} plot and actors", "{} but not very"]


def sentiment_data() -> tuple[list[str], np.ndarray]:
    """40 texts; the label is which word list the text's one sentiment word comes from."""
    texts, labels = [], []
    for (word, label), frame in itertools.product([(w, 1) for w in POSITIVE] + [(w, 0) for w in NEGATIVE], FRAMES):
        texts.append(frame.format(word))
        labels.append(label)
    return texts, np.array(labels)


@pytest.fixture(scope="module")
def folders(tiny_models, tmp_path_factory):
    """Saved embedders: two single-model ones and a two-model concat fusion."""
    root = tmp_path_factory.mktemp("classifier_embedders")
    paths = {
        "llama": build_fused_model(tiny_models["llama"], layers=[2, 4]),
        "bert": build_fused_model(tiny_models["bert"], layers=[3]),
        "pair": build_fused_model([tiny_models["llama"], tiny_models["bert"]], layers=[[2, 4], [3]]),
    }
    for name, model in paths.items():
        model.save(str(root / name))
    return {name: str(root / name) for name in paths}


def test_fit_predict_score_on_texts(folders):
    texts, labels = sentiment_data()
    classifier = FusedClassifier(folders["llama"], head=LogisticHead(C=1.0), embedding_cache=EmbeddingCache())
    assert classifier.fit(texts, labels) is classifier
    assert classifier.classes_.tolist() == [0, 1]
    assert classifier.score(texts, labels) == 1.0
    proba = classifier.predict_proba(["the movie was great", "i hated this film"])
    assert proba.shape == (2, 2) and np.allclose(proba.sum(axis=1), 1)
    assert classifier.predict(["the movie was great"]).tolist() == [int(np.argmax(proba[0]))]
    vectors, dims = classifier.embed(texts)
    np.testing.assert_array_equal(classifier.decision_function(texts), classifier.head_.decision_function(vectors))
    assert dims == (64,) and classifier.embedding_dimension_ == 64


def test_params_clone_and_tags(folders):
    classifier = FusedClassifier(folders["llama"], head=LogisticHead(C=0.5))
    params = classifier.get_params()
    assert params["head__C"] == 0.5 and params["embedder"] == folders["llama"]
    classifier.set_params(head__class_weight="balanced", batch_size=8)
    assert classifier.head.class_weight == "balanced"
    texts, labels = sentiment_data()
    classifier.fit(texts, labels)
    copy = clone(classifier)
    assert copy.embedder is classifier.embedder and copy.head is not classifier.head
    assert copy.head.get_params() == classifier.head.get_params() and not hasattr(copy, "head_")
    tags = classifier.__sklearn_tags__()
    assert tags.input_tags.string and not tags.input_tags.two_d_array
    assert not hasattr(FusedClassifier(folders["llama"], head="mlp"), "decision_function")


def test_cross_validation_and_grid_search_embed_each_text_once(folders):
    texts, labels = sentiment_data()
    cache = EmbeddingCache()
    classifier = FusedClassifier(folders["llama"], head=LogisticHead(), embedding_cache=cache)
    scores = cross_val_score(classifier, texts, labels, cv=4)
    assert len(scores) == 4 and cache.computed == len(texts)
    search = GridSearchCV(classifier, {"head__C": [0.01, 1.0, 100.0]}, cv=4).fit(texts, labels)
    assert search.best_params_["head__C"] in (0.01, 1.0, 100.0)
    assert cache.computed == len(texts)  # 12 fits and the refit: no text embedded again
    embedders = GridSearchCV(
        FusedClassifier(folders["llama"], head=LogisticHead(C=1.0), embedding_cache=cache),
        {"embedder": [folders["llama"], folders["bert"]]},
        cv=4,
    ).fit(texts, labels)
    assert embedders.best_params_["embedder"] in (folders["llama"], folders["bert"])
    assert cache.computed == 2 * len(texts)  # each embedder embedded each text once
    best_of_each = embedders.cv_results_["mean_test_score"]  # the grid's scores are the embedders' own CV scores
    manual = [cross_val_score(FusedClassifier(f, head=LogisticHead(C=1.0), embedding_cache=cache), texts, labels, cv=4)
              for f in (folders["llama"], folders["bert"])]  # fmt: skip
    np.testing.assert_allclose(best_of_each, [m.mean() for m in manual])


def test_save_load_round_trip_keeps_labels_and_predictions(folders, tmp_path):
    texts, labels = sentiment_data()
    names = np.array(["negative", "positive"])[labels]
    classifier = FusedClassifier(folders["pair"], head=HadamardResidualHead(hidden_sizes=(16, 8), max_epochs=20))
    classifier.fit(texts, names)
    assert classifier.head_.member_dims_ == (64, 32)
    path = classifier.save(tmp_path / "clf")
    loaded = FusedClassifier.load(path, embedding_cache=EmbeddingCache())
    assert loaded.predict(texts).tolist() == classifier.predict(texts).tolist()
    np.testing.assert_array_equal(loaded.predict_proba(texts), classifier.predict_proba(texts))
    assert isinstance(loaded.predict(texts[:1])[0], str)
    assert loaded.get_params()["head__hidden_sizes"] == (16, 8)


def test_a_head_from_another_embedder_is_refused(folders, tmp_path):
    texts, labels = sentiment_data()
    FusedClassifier(folders["llama"], head=LogisticHead(C=1.0)).fit(texts, labels).save(tmp_path / "llama")
    FusedClassifier(folders["bert"], head=LogisticHead(C=1.0)).fit(texts, labels).save(tmp_path / "bert")
    shutil.rmtree(tmp_path / "llama" / "head")
    shutil.copytree(tmp_path / "bert" / "head", tmp_path / "llama" / "head")
    with pytest.raises(ValueError, match="belongs to another embedder"):
        FusedClassifier.load(tmp_path / "llama")
    with pytest.raises(FileNotFoundError, match="not a saved FusedClassifier"):
        FusedClassifier.load(folders["llama"])


def test_bad_input(folders):
    texts, labels = sentiment_data()
    classifier = FusedClassifier(folders["llama"], head=MLPHead(hidden_sizes=(8,), dropout=(0.1,), max_epochs=3))
    with pytest.raises(NotFittedError):
        classifier.predict(texts)
    with pytest.raises(TypeError, match="single string"):
        classifier.fit("the movie was good", [1])
    with pytest.raises(TypeError, match="Input 1 is int"):
        classifier.fit(["good", 3], [0, 1])
    with pytest.raises(ValueError, match="40 texts but 39 labels"):
        classifier.fit(texts, labels[:-1])
    with pytest.raises(ValueError, match="exactly two embedders"):
        FusedClassifier(folders["llama"], head="hadamard").fit(texts, labels)
    with pytest.raises(TypeError, match="embedder must be"):
        FusedClassifier(42).fit(texts, labels)
    with pytest.raises(FileNotFoundError, match="no modules.json"):
        FusedClassifier("/nonexistent").fit(texts, labels)


def test_embedding_cache_keeps_vectors_within_its_budget(folders):
    texts, labels = sentiment_data()
    cache = EmbeddingCache(max_bytes=10 * 64 * 4)  # ten 64-d float32 vectors
    classifier = FusedClassifier(folders["llama"], head=LogisticHead(C=1.0), embedding_cache=cache)
    classifier.fit(texts, labels)
    assert len(cache) == 10 and cache.computed == len(texts)
    expected = FusedClassifier(folders["llama"], head=LogisticHead(C=1.0), embedding_cache=EmbeddingCache())
    np.testing.assert_array_equal(classifier.embed(texts)[0], expected.embed(texts)[0])
    assert cache.computed == 2 * len(texts) - 10  # the ten kept were not embedded again


def test_grid_search_over_two_specs_and_c(tiny_models):
    """The issue's example: ``{"embedder": [spec_a, spec_b], "head__C": [...]}``; each spec embeds each text once."""
    texts, labels = sentiment_data()
    specs = [EmbedderSpec(tiny_models["llama"], [2, 4]), EmbedderSpec(tiny_models["gemma3"], [3], pooling="last")]
    cache = EmbeddingCache()
    search = GridSearchCV(
        FusedClassifier(specs[0], head=LogisticHead(), embedding_cache=cache),
        {"embedder": specs, "head__C": [0.1, 10.0]},
        cv=4,
    ).fit(texts, labels)
    assert search.best_params_["embedder"] in specs and cache.computed == 2 * len(texts)
    best = search.best_estimator_
    assert best.head_.C_ == search.best_params_["head__C"] and best.embedder == search.best_params_["embedder"]
    vectors, _ = best.embed(texts)
    np.testing.assert_allclose(vectors, best.embedder.build().encode(texts), atol=1e-5)
