"""The MedSAM-Agent conversation: system prompt, user turns and history, for inference AND training.

Every consumer renders the conversation from here, so the prompt the policy is trained on cannot drift
from the prompt it is run with: ``lib.agent.policies.vlm`` (inference), ``lib.learning.vlm.sft`` (SFT export:
LLaMA-Factory ShareGPT and the TRL dataset), ``lib.learning.vlm.grpo`` (RL rollouts) and
``lib.learning.policy.verl_export``.

Texts (as in the released MedSAM-Agent code):

- system: the reference's system prompt verbatim, the three tool schemas (``lib.agent.grammar``) one
  ``json.dumps`` per line inside ``<tools></tools>``; Qwen's own tool preamble (``tools=`` of the chat
  template) is deliberately not used, as in the reference.
- first user turn: image, then "The target to be segmented is: {target}.\\nNow, please analyze the original
  image, then decide your first action."
- later user turns: image (the mask overlay after the previous action), then the follow-up sentence.

The user texts are the RL variant (the training stage the released checkpoint saw last): no literal
``<image>`` string next to the real image item (a bug of the released MedSAM-Agent code) and no space after the newline.
Each user message carries ITS OWN image as a content item, so a past turn always shows the overlay it had
when it was asked (the reference inference substituted images from a side list, off by one).

History: messages = system + the last ``history`` completed (user, assistant) pairs + the current user turn
(reference ``max_history_length = 5``). With the default budget of 5 actions an episode has at most 6
decisions, so the window always holds the whole episode and the first turn's target sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lib.agent.grammar import tools_block

#: the reference system prompt (model_loader.py:150-165, medsam_dataset.py:130-145), tools embedded by hand
SYSTEM_PROMPT = (
    "You are a professional segmentation annotator specializing in mask creation and refinement. "
    "Your core task is to segment the USER-SPECIFIED TARGET REGION from the provided image. "
    "No preliminary mask is available\u2014you must first create an initial mask using the tool, then iteratively "
    "refine it to achieve pixel-level accuracy. "
    "The mask will be displayed as a semi-transparent green overlay; your goal is to ensure it exactly covers the "
    "entire target region and excludes all non-target areas (e.g., background, adjacent objects).\n\n"
    "# Tools\n\n"
    "You must call one function to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    f"{tools_block()}\n"
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>\n\n"
    "Only use the provided functions to complete your task. Do not invent or assume any other functions. "
    "Carefully consider the current mask state before each action."
)

#: first user turn (RL variant, medsam_dataset.py:199); ``{target}`` = the label's referring text
FIRST_TURN = (
    "The target to be segmented is: {target}.\nNow, please analyze the original image, then decide your first action."
)
#: every later user turn (RL variant, medsam_iterative_agent_loop.py:503-507)
FOLLOWUP_TURN = (
    "Here is the updated mask after your previous action.\n"
    "Based on this, what is your next action? If the mask is now accurate, you can call 'stop_action' to finish."
)
#: completed (user, assistant) pairs kept before the current user turn (reference max_history_length)
HISTORY_TURNS = 5
#: the placeholder LLaMA-Factory expects in a user text for each image, in order
SHAREGPT_IMAGE_TOKEN = "<image>"


def user_text(target: str, turn_index: int) -> str:
    """The user sentence of decision ``turn_index`` (0 = first turn, naming the target)."""
    if turn_index < 0:
        raise ValueError(f"turn_index must be >= 0, got {turn_index}")
    if turn_index == 0:
        if not str(target).strip():
            raise ValueError("the first turn needs a target description (the label name), got an empty string")
        return FIRST_TURN.format(target=target)
    return FOLLOWUP_TURN


@dataclass(frozen=True)
class Turn:
    """One decision of an episode.

    Attributes:
        image: what the model saw at this decision (a ``PIL.Image``, a file path, or None for a placeholder
            whose image travels separately, as TRL's ``images`` column does).
        text: the user sentence (``user_text``).
        response: the assistant's answer (tool-call text), or None for the decision being asked now.
    """

    image: Any
    text: str
    response: str | None = None


def window(turns: Sequence[Turn], history: int = HISTORY_TURNS) -> list[Turn]:
    """The turns a prompt shows: the last ``history`` completed turns plus, if present, the open one.

    A completed turn has a response; at most the last turn may be open (the decision being asked).
    """
    if history < 0:
        raise ValueError(f"history must be >= 0 completed turns, got {history}")
    turns = list(turns)
    for t in turns[:-1]:
        if t.response is None:
            raise ValueError("only the last turn may lack a response (it is the decision being asked)")
    open_turn = [turns.pop()] if turns and turns[-1].response is None else []
    kept = turns[len(turns) - history :] if history else []
    return kept + open_turn


def chat_messages(turns: Sequence[Turn], history: int = HISTORY_TURNS, image_payload: bool = True) -> list[dict]:
    """Hugging Face multimodal chat messages (``processor.apply_chat_template`` / TRL form).

    Args:
        turns: the episode's decisions so far (see ``Turn``); the last one may be open.
        history: completed turns kept (``window``).
        image_payload: True puts each turn's image inside its message (``{"type": "image", "image": img}``);
            False leaves a bare ``{"type": "image"}`` placeholder, filled later from a separate image list in
            message order (TRL's ``images`` column).

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}, ...]``, every content a
        list of ``{"type": "text", "text": ...}`` / image items; the image comes before the text in a user turn.
    """
    messages: list[dict] = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}]
    for t in window(turns, history):
        image_item: dict[str, Any] = {"type": "image", "image": t.image} if image_payload else {"type": "image"}
        messages.append({"role": "user", "content": [image_item, {"type": "text", "text": t.text}]})
        if t.response is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": t.response}]})
    return messages


def message_images(turns: Sequence[Turn], history: int = HISTORY_TURNS) -> list[Any]:
    """The images of ``chat_messages(turns, history)`` in message order (one per user turn)."""
    return [t.image for t in window(turns, history)]


def sharegpt_messages(turns: Sequence[Turn]) -> list[dict[str, str]]:
    """LLaMA-Factory ShareGPT ``messages`` of a whole conversation (system prompt NOT included).

    Each user message is ``"<image>" + text`` (one placeholder per image, matching the record's ``images`` list
    in order), each assistant message the response text. Every turn must be completed.
    """
    out: list[dict[str, str]] = []
    for t in turns:
        if t.response is None:
            raise ValueError("a training conversation needs a response for every turn")
        out.append({"role": "user", "content": SHAREGPT_IMAGE_TOKEN + t.text})
        out.append({"role": "assistant", "content": t.response})
    return out


def training_windows(turns: Sequence[Turn], history: int = HISTORY_TURNS) -> list[list[Turn]]:
    """Split a completed episode into conversations that each match what inference would have shown.

    An episode of at most ``history + 1`` decisions is one conversation (every decision saw the whole
    episode). A longer one gets, for each further decision ``k``, a conversation of the ``history`` turns
    before it plus ``k`` itself, so that decision is trained on exactly the prompt inference gives it.
    (Trainers that learn every assistant turn of a conversation then see those earlier turns twice; with the
    default turn budget this never happens.)
    """
    turns = list(turns)
    if len(turns) <= history + 1:
        return [turns]
    out = [turns[: history + 1]]
    for k in range(history + 1, len(turns)):
        out.append(turns[k - history : k + 1])
    return out
