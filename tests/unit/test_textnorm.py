"""The normal form shared by the text read from pictures and the words people search for."""

from __future__ import annotations

import pytest

from retrieval.encoding.textnorm import compact, normalise, normalise_query


@pytest.mark.parametrize(
    ("typed", "normal"),
    [
        ("ＤＥＰＬＯＹ　ＦＡＩＬＥＤ", "deploy failed"),  # full-width letters and space
        ("ﬁle not found", "file not found"),  # ligature
        ("Straße", "strasse"),  # case folding, not lower()
        ("ΣΊΣΥΦΟΣ", "σίσυφοσ"),  # final sigma folds like the others
        ("Ⅻ ① ㎏", "xii 1 kg"),  # compatibility forms
        ("e\u0301te\u0301", "été"),  # combining accents composed
    ],
)
def test_nfkc_and_case_folding(typed, normal):
    assert normalise(typed) == normal


def test_whitespace_collapses_to_single_spaces_and_invisible_characters_go():
    assert normalise("  deploy \t failed\n\non\u00a0\u2003friday \r\n") == "deploy failed on friday"
    assert normalise("de\u200bploy\u00ad fai\u200dled\ufeff") == "deploy failed"
    assert normalise("\x00deploy\x07failed") == "deploy failed"
    assert normalise(" \n\t ") == ""


def test_typographic_quotes_apostrophes_and_dashes_fold_to_ascii():
    assert normalise("\u201cdeploy failed\u201d \u2014friday") == '"deploy failed" -friday'
    assert normalise("don\u2019t \u2018panic\u2019") == "don't 'panic'"
    assert normalise("\u00abbonjour\u00bb \u2212dog \u2013cat") == '"bonjour" -dog -cat'
    assert normalise("\u300c部署失败\u300d") == '"部署失败"'


def test_spaces_inside_chinese_and_japanese_go_but_not_around_latin_or_korean():
    assert normalise("部署 失败 了") == "部署失败了"
    assert normalise("周五 部署 failed 了") == "周五部署 failed 了"
    assert normalise("デプロイ 失敗") == "デプロイ失敗"
    assert normalise("배포 실패") == "배포 실패"


@pytest.mark.parametrize(
    "text",
    [
        "Straße  ＤＥＰＬＯＹ",
        "部署 失败 了",
        "\u201cquoted\u201d \u2014 dash",
        "ΣΊΣΥΦΟΣ ς",
        "Ⅻ ﬁ",
        "",
    ],
)
def test_normalising_twice_changes_nothing(text):
    assert normalise(normalise(text)) == normalise(text)


def test_a_query_typed_differently_finds_the_text_read_from_a_picture():
    read = normalise("ERROR:  Deploy   FAILED on Friday\u2019s build")
    for query in ("deploy failed", "DEPLOY FAILED", "Ｄeploy\u00a0failed", "friday's build"):
        assert normalise_query(query) in read
    assert normalise_query("部署 失败") in normalise("周五部署失败了")
    assert normalise_query('"deploy failed" -friday') == '"deploy failed" -friday'


def test_the_compact_form_keeps_only_letters_and_digits():
    assert compact("Winter jelly, ARMY!") == "winterjellyarmy"
    assert compact("coffee.violin gold") == compact("Coffee violin  gold")
    assert compact("部署 失败：周五") == "部署失败周五"
    assert compact("v1.2 — ok") == "v12ok"
