"""The test repositories copy the project's DVC settings, never a remote the user has added."""

import configparser
import io

from pipeline_repo import ROOT, settings_without_remotes


def test_a_users_remote_is_left_out_and_the_settings_kept():
    # What `dvc remote add -d shared s3://bucket/pneumonia` makes of the project's .dvc/config
    users = configparser.ConfigParser()
    users.read(ROOT / ".dvc" / "config")
    users.set("core", "remote", "shared")
    users.add_section("'remote \"shared\"'")
    users.set("'remote \"shared\"'", "url", "s3://bucket/pneumonia")
    text = io.StringIO()
    users.write(text)
    assert "s3://bucket" in text.getvalue()

    config = configparser.ConfigParser()
    config.read_string(settings_without_remotes(text.getvalue()))
    assert not [s for s in config.sections() if "remote" in s]
    assert not config.has_option("core", "remote")
    assert config.get("cache", "type") == '"reflink,hardlink,copy"'
    assert config.get("plots", "html_template") == "plots/page.html"
