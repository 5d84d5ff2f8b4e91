"""The words read from pictures in the store: kept in their image's row, found through the text
index (FTS5 trigram on SQLite, pg_trgm GIN on PostgreSQL), and gone with their image by every
deletion there is."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from retrieval.database.engine import downgrade, upgrade
from retrieval.store import PictureWords, SearchScope
from tests.db.test_store_policy import other_process
from tests.records import MODEL
from tests.records import image_record as record

SAYS = {
    0: "deploy failed on friday",
    1: "cat tax\nmonday again",
    2: "部署失败了",
    3: "",  # read, no text
    4: "100% done_ok",
    5: "deploy succeeded",
}
SCOPE = SearchScope(guild_id=1, model_id=MODEL)


def vectors(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return list(x / np.linalg.norm(x, axis=1, keepdims=True))


def said(i: int, words: str | None = None, **where) -> PictureWords:
    r = record(i, np.zeros(1), **where)
    return PictureWords(
        guild_id=r.guild_id,
        message_id=r.message_id,
        image_key=r.image_key,
        words=SAYS[i] if words is None else words,
        model="ocr-test",
        confidence=0.9,
    )


@pytest.fixture
async def read(store):
    """Ten images (channels 10-12, authors 70/71), six of them read."""
    await store.upsert([record(i, v) for i, v in enumerate(vectors(10))])
    assert await store.store_words([said(i) for i in SAYS]) == len(SAYS)
    return store


async def found(store, *phrases, none_of=(), scope=SCOPE) -> set[int]:
    hits = await store.words_matching(scope=scope, all_of=phrases, none_of=none_of, k=50)
    return {h.image_key for h in hits}


async def index_is_whole(store) -> None:
    """SQLite: the FTS5 index holds exactly the images' words, no more, no less (its integrity
    check, against the content table: rank 1)."""
    if store.engine.dialect.name == "sqlite":
        check = "INSERT INTO images_words(images_words, rank) VALUES ('integrity-check', 1)"
        async with store.engine.begin() as conn:
            await conn.execute(text(check))


async def test_words_are_found_as_substrings_in_any_script(read):
    assert await found(read, "deploy") == {0, 5}
    assert await found(read, "failed on fri") == {0}
    assert await found(read, "deploy", none_of=["fail"]) == {5}
    assert await found(read, "monday again") == {1}
    assert await found(read, "失败") == {2}  # two characters: no trigram, read row by row
    assert await found(read, "部署失败") == {2}
    assert await found(read, "100%") == {4}  # LIKE's wildcards are plain characters here
    assert await found(read, "e_o") == {4}
    assert await found(read, "0% d") == {4}
    assert await found(read, "nowhere") == set()
    assert await found(read, 'say "hi"') == set()  # quotes cannot break out of the phrase
    await index_is_whole(read)


async def test_the_scope_applies_to_words_as_to_vectors(read):
    assert await found(read, "deploy", scope=SearchScope(guild_id=2, model_id=MODEL)) == set()
    assert await found(read, "deploy", scope=SearchScope(1, "other-model")) == set()
    channel = SearchScope(guild_id=1, model_id=MODEL, channel_ids=frozenset({10}))
    assert await found(read, "deploy", scope=channel) == {0}  # 5 is in channel 12
    author = SearchScope(guild_id=1, model_id=MODEL, author_id=71)
    assert await found(read, "deploy", scope=author) == {5}


async def test_words_are_read_back_and_counted_for_their_member(read):
    hits = await read.search(vectors(10)[0], scope=SCOPE, k=10)
    row = {h.image_key: h.row_id for h in hits}
    words = await read.words_of([row[0], row[3], row[5], row[7]], guild_id=1)
    assert words == {row[0]: SAYS[0], row[3]: "", row[5]: SAYS[5]}  # 7 was not read
    assert await read.words_of([row[0]], guild_id=2) == {}
    assert await read.count_words(author_id=70) == 3  # even images: 0, 2 and 4
    assert await read.count_words(author_id=71, guild_id=1) == 2  # 1 and 5 (3 says nothing)
    assert await read.count_words(author_id=71, guild_id=2) == 0


async def test_an_image_not_stored_takes_no_words(store):
    assert await store.store_words([said(0)]) == 0
    await store.upsert([record(0, vectors(1)[0])])
    assert await store.store_words([said(0)]) == 1
    assert await found(store, "friday") == {0}


async def test_an_image_written_again_keeps_its_words(read):
    """Re-delivery, a backfill pass or another CLIP model rewrites the row, not its words."""
    vs = vectors(10)
    await read.upsert([record(0, vs[1]), record(5, vs[0], model_id="next-model")])
    assert await found(read, "deploy") == {0}
    assert await found(read, "deploy", scope=SearchScope(1, "next-model")) == {5}
    await index_is_whole(read)


async def test_reading_again_replaces_the_words(read):
    assert await read.store_words([said(0, "deploy fixed")]) == 1
    assert await found(read, "failed") == set()
    assert await found(read, "deploy fixed") == {0}
    await index_is_whole(read)


async def test_every_deletion_takes_the_words_with_the_image(read, store_engine):
    await read.delete_messages([1000], guild_id=1)  # image 0
    assert await found(read, "deploy") == {5}
    await read.delete_images(1001, keep_keys=[], guild_id=1)  # image 1
    assert await found(read, "monday") == set()
    await read.delete_channels([12], guild_id=1)  # image 5 (and 2, 8)
    assert await found(read, "deploy") == set()
    assert await found(read, "部署") == set()
    await read.delete_author(guild_id=None, author_id=70)  # image 4 among others
    assert await found(read, "done") == set()
    await index_is_whole(read)
    assert await read.count_words(author_id=70) == await read.count_words(author_id=71) == 0


async def test_the_policy_sweep_and_a_purge_take_the_words(read, store_engine):
    async with other_process(store_engine) as elsewhere:
        await elsewhere.opt_out(71)
        # Hidden at once, and no words are written for what the policy forbids.
        assert await found(read, "deploy") == {0}
        assert await read.store_words([said(5, "deploy again")]) == 0
        assert await read.delete_forbidden() == 5
        await elsewhere.opt_in(71)
    assert await found(read, "deploy") == {0}
    assert await read.count_words(author_id=71) == 0
    await read.delete_guild(1)
    assert await found(read, "deploy") == set()
    await index_is_whole(read)


async def test_a_stale_model_row_goes_with_its_words(read):
    """A channel re-indexed by another model deletes the old model's rows it did not find."""
    await read.delete_other_models(10, "next-model", guild_id=1)
    assert await found(read, "deploy") == {5}  # image 0 was in channel 10
    await index_is_whole(read)


async def test_words_of_a_server_are_forgotten_when_reading_is_turned_off(read):
    assert await read.forget_words(guild_id=2) == 0
    assert await read.forget_words(guild_id=1) == len(SAYS)
    assert await found(read, "deploy") == set()
    assert await read.count_words(author_id=70) == 0
    await index_is_whole(read)


async def test_the_revision_goes_down_and_up_with_words_stored(read):
    """0013's downgrade drops the words and the text index; its upgrade makes them again."""
    await downgrade(read.engine, "0012")
    await upgrade(read.engine)
    assert await found(read, "deploy") == set()
    assert await read.store_words([said(0)]) == 1
    assert await found(read, "deploy") == {0}
    await index_is_whole(read)


async def test_words_filters_apply_inside_the_vector_search(read):
    """Quoted words and -words narrow the CLIP search itself: k still fills from what passes."""
    query = vectors(10)[0]

    async def searched(**words) -> list[int]:
        scope = SearchScope(guild_id=1, model_id=MODEL, **words)
        return [h.image_key for h in await read.search(query, scope=scope, k=3)]

    assert await searched(words_all=("deploy",)) in ([0, 5], [5, 0])
    assert await searched(words_all=("deploy", "friday")) == [0]
    assert await searched(words_all=("失败",)) == [2]  # too short for trigrams
    assert await searched(words_all=("nowhere",)) == []
    unfiltered = await searched()
    kept = await searched(words_none=("deploy", "cat"))
    assert len(kept) == 3 and not {0, 1, 5} & set(kept)
    assert unfiltered[0] == 0 and kept != unfiltered
    assert await searched(words_all=("deploy",), words_none=("fail",)) == [5]


async def test_an_excluded_word_most_pictures_say_still_fills_k(read):
    """The -word is tested on the ranked rows: where most of the best say it, the search ranks
    further until k rows that do not say it are found."""
    common = [said(i, words=f"common {i}") for i in range(7)]
    assert await read.store_words(common) == 7
    query = vectors(10)[0]
    scope = SearchScope(guild_id=1, model_id=MODEL, words_none=("common",))
    hits = await read.search(query, scope=scope, k=3)
    assert sorted(h.image_key for h in hits) == [7, 8, 9]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
