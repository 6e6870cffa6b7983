"""The shots of one batch run: the .blend files named on the command line and in a shot list (--shots FILE),
each with its own flags. Pure argparse: no bpy, so a list's mistakes are found before Blender opens anything.

A shot list is a text file, one shot per line, written as on a command line (shell quoting, `#` comments,
blank lines skipped):

    seq010/sh010.blend --prompt "ink, dusk" --seed 7
    seq010/sh020.blend --scene "sh020 alt" --keyframes every:12 --reference art/knight.png,art/knight_back.png
    "seq010/sh 030.blend" --out renders/sh030_previs.blend

A line's flags override the command's own for that shot; the rest are the command's. Relative paths on a line
(the shot, --out, --passes-dir, each file of --reference) are relative to the list's folder, so the list can sit
beside the shots."""

from __future__ import annotations

import argparse
import copy
import shlex
from pathlib import Path

LINE_PATHS = ("out", "passes_dir")  # a line's path flags, relative to the list's folder
LINE_PATH_LISTS = ("reference",)  # a line's comma-separated path flags, each relative to the list's folder


class ShotListError(ValueError):
    """A shot list that cannot be read, or a line of it that does not parse; the message names the line."""


def _line_parser(make_parser, where: str) -> argparse.ArgumentParser:
    """The command's parser, but only what a line gives ends up in its namespace, and a bad line raises."""
    line = make_parser()
    for action in line._actions:
        action.default = argparse.SUPPRESS

    def refuse(message: str):
        raise ShotListError(f"{where}: {message}")

    line.error = refuse
    line.exit = lambda status=0, message=None: refuse(message or "not a shot line")  # --help on a line
    return line


def read_shot_list(path: Path) -> list[tuple[str, list[str]]]:
    """(where, the line's words) for each shot line of the list: where is 'FILE line N'."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ShotListError(f"cannot read the shot list {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ShotListError(f"the shot list {path} is not text (UTF-8)") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path.name} line {number}"
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:  # an open quote
            raise ShotListError(f"{where}: {e}") from None
        if words:
            lines.append((where, words))
    if not lines:
        raise ShotListError(f"the shot list {path} names no shot")
    return lines


def plan_shots(make_parser, args: argparse.Namespace) -> list[argparse.Namespace]:
    """One namespace per shot, in order: the command's shots, then the list's. Each has `shot` (one file) and
    `where` (how messages name it: the file as written on the command or the list's line). `make_parser` makes
    the command's parser (for the lines). ShotListError for a list or line that is wrong, ValueError for flags
    that do not fit several shots."""
    plans = []
    for shot in args.shots:
        plan = copy.copy(args)
        plan.shot, plan.where = shot, shot
        plans.append(plan)
    if args.shots_file:
        list_path = Path(args.shots_file).expanduser()
        folder = list_path.parent
        for where, words in read_shot_list(list_path):
            given = vars(_line_parser(make_parser, where).parse_args(words))
            if "shots_file" in given:
                raise ShotListError(f"{where}: a shot list cannot name another (--shots)")
            files = given.pop("shots", [])
            if len(files) != 1:
                raise ShotListError(
                    f"{where}: name one .blend file per line (found {len(files)}: {' '.join(files) or 'none'})"
                )
            plan = copy.copy(args)
            vars(plan).update(given)
            plan.shot, plan.where = str(_beside(folder, files[0])), files[0]  # lines name the shot's file
            for flag in LINE_PATHS:
                if given.get(flag):
                    setattr(plan, flag, str(_beside(folder, given[flag])))
            for flag in LINE_PATH_LISTS:
                if given.get(flag):
                    setattr(plan, flag, _list_beside(folder, given[flag]))
            plans.append(plan)
    if not plans:
        raise ValueError("name a .blend file, several, or a shot list (--shots FILE)")
    _tell_apart(plans)
    if args.out and len(plans) > 1:
        raise ValueError(
            "--out names one file, but this run has several shots: leave it out (each result goes beside its "
            "shot as SHOT_previs.blend) or give each line of the shot list its own --out"
        )
    return plans


def _tell_apart(plans: list[argparse.Namespace]) -> None:
    """A file named on several lines (other scenes of one file) is told apart by its scene, else its place."""
    for i, plan in enumerate(plans):
        if sum(p.where == plan.where for p in plans) > 1:
            plan.label_extra = f"scene {plan.scene}" if getattr(plan, "scene", None) else f"shot {i + 1}"
    for plan in plans:
        if extra := vars(plan).pop("label_extra", ""):
            plan.where = f"{plan.where} ({extra})"


def _list_beside(folder: Path, text: str) -> str:
    """ "a.png,b.png" with each relative path made relative to `folder` ("//" (beside the .blend) and "none" kept)."""
    if text.strip().lower() == "none":
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return ",".join(p if p.startswith("//") else str(_beside(folder, p)) for p in parts)


def _beside(folder: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else folder / p
