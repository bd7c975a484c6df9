"""The conversation builder shared by inference and training."""

from __future__ import annotations

import json

import pytest

from lib.agent.grammar import TOOL_SCHEMAS
from lib.agent.vlm_prompt import (
    FOLLOWUP_TURN,
    SYSTEM_PROMPT,
    Turn,
    chat_messages,
    message_images,
    sharegpt_messages,
    training_windows,
    user_text,
    window,
)


def test_system_prompt_embeds_the_three_tools_one_json_per_line():
    block = SYSTEM_PROMPT.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert [json.loads(line) for line in block.split("\n")] == list(TOOL_SCHEMAS)
    assert SYSTEM_PROMPT.startswith("You are a professional segmentation annotator")
    assert SYSTEM_PROMPT.endswith("Carefully consider the current mask state before each action.")
    assert "semi-transparent green overlay" in SYSTEM_PROMPT


def test_user_turns():
    assert user_text("liver", 0) == (
        "The target to be segmented is: liver.\nNow, please analyze the original image, then decide your first action."
    )
    assert user_text("liver", 3) == FOLLOWUP_TURN
    assert "<image>" not in user_text("liver", 0) + FOLLOWUP_TURN  # the image is a content item, not a string
    with pytest.raises(ValueError, match="target"):
        user_text("  ", 0)


def test_each_user_message_carries_its_own_image_and_history_is_windowed():
    turns = [Turn(f"img{k}", user_text("liver", k), f"answer{k}") for k in range(7)] + [Turn("img7", FOLLOWUP_TURN)]
    msgs = chat_messages(turns, history=5)
    assert msgs[0]["role"] == "system"
    users = [m for m in msgs if m["role"] == "user"]
    assert [u["content"][0]["image"] for u in users] == ["img2", "img3", "img4", "img5", "img6", "img7"]
    assert message_images(turns, 5) == ["img2", "img3", "img4", "img5", "img6", "img7"]
    assert [m["content"][0]["text"] for m in msgs if m["role"] == "assistant"] == [f"answer{k}" for k in range(2, 7)]
    assert msgs[-1]["role"] == "user"
    bare = chat_messages(turns[:1], image_payload=False)
    assert bare[1]["content"][0] == {"type": "image"}


def test_window_rejects_open_turns_in_the_middle():
    with pytest.raises(ValueError, match="only the last"):
        window([Turn(None, "a"), Turn(None, "b", "x")])


def test_training_windows_match_what_inference_shows():
    turns = [Turn(k, user_text("t", k), f"a{k}") for k in range(8)]
    convs = training_windows(turns, history=5)
    assert [len(c) for c in convs] == [6, 6, 6]
    assert [t.image for t in convs[1]] == [1, 2, 3, 4, 5, 6]
    assert training_windows(turns[:6], 5) == [turns[:6]]


def test_sharegpt_messages_put_one_image_token_per_user_turn():
    turns = [Turn("a.png", user_text("t", 0), "x"), Turn("b.png", FOLLOWUP_TURN, "y")]
    msgs = sharegpt_messages(turns)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert all(m["content"].startswith("<image>") for m in msgs[::2])
    with pytest.raises(ValueError):
        sharegpt_messages([Turn("a", "t")])
