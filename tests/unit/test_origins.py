"""Which URLs the media origins let through, and the setting that lists them."""

from __future__ import annotations

import pytest

from retrieval.config import load_settings
from retrieval.errors import ConfigError
from retrieval.pictures.origins import MediaOrigins


def test_the_default_allows_discords_cdn_and_media_proxy_only():
    allowed = load_settings(_env_file=None).media_origins()
    for url in (
        "https://cdn.discordapp.com/attachments/1/2/a.png?ex=1&is=2&hm=3&",
        "https://media.discordapp.net/attachments/1/2/a.png?width=100",
        "https://images-ext-1.discordapp.net/external/abc/https/example.com/a.png",
        "https://CDN.DiscordApp.com:443/attachments/1/2/a.png",
    ):
        assert allowed.allows(url), url
    for url in (
        "https://example.com/a.png",
        "http://cdn.discordapp.com/a.png",  # the scheme is part of the origin
        "https://cdn.discordapp.com:8443/a.png",
        "https://cdn.discordapp.com@example.com/a.png",  # the host is example.com
        "https://cdn.discordapp.com.example.com/a.png",
        "https://discordapp.net/a.png",
        "https://a.b.discordapp.net/a.png",
        "/attachments/1/2/a.png",
        "not a url",
    ):
        assert not allowed.allows(url), url


def test_ports_and_ip_hosts_are_matched_exactly():
    allowed = MediaOrigins.parse(" http://127.0.0.1:8080 , http://[::1]:9000 ")
    assert allowed.allows("http://127.0.0.1:8080/x")
    assert not allowed.allows("http://127.0.0.1:8081/x")
    assert not allowed.allows("http://127.0.0.1/x")
    assert allowed.allows("http://[::1]:9000/x")
    assert str(allowed) == "http://127.0.0.1:8080, http://[::1]:9000"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("", "at least one origin"),
        (" , ", "at least one origin"),
        ("https://cdn.discordapp.com,cdn.discordapp.com", "must start with https:// or http://"),
        ("https://cdn.discordapp.com/attachments", "without a path"),
        ("https://user:pw@cdn.discordapp.com", "user name or password"),
        ("https://cdn.*.com", "wildcard may only open it"),
        ("https://*.", "needs a host name"),
        ("https://cdn.discordapp.com:99999", "not an origin"),
    ],
)
def test_a_bad_setting_stops_start_up_with_a_clear_error(value, complaint):
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None, discord_media_origins=value)
    message = str(refused.value)
    assert "DISCORD_MEDIA_ORIGINS" in message and complaint in message
