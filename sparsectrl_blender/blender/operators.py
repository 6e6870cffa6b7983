"""Operators: check connection, generate / regenerate / retake, cancel, randomise seed (bpy).

HTTP never runs on Blender's main thread: a worker thread talks to the server and a bpy.app.timers function
(main thread) reads its state, updates the panel and, when the video is in, adds the strip. An operator only makes
the thread; the timer's first call starts it, once the operator has returned: a thread running Python while the
main thread was still inside the operator's call segfaulted the bpy module (4.5.15, once in CI), as one running
beside a render did (core/render_guard.py). Without an event loop (bpy as a module) call `run_timers()`.

Generate renders its passes from a timer too, one render per tick (generation.prepare_steps), so Blender's UI
answers between renders, shows the progress and can cancel (Esc or Cancel) before anything is sent. Blender run
in the background (bpy as a module, scripts) has no UI to keep alive: there the operator renders them all at once
(STEP_PASSES), as the batch does.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import bpy

from ..core.client import Client, ServerError
from ..core.job import JobRunner, PreparedJob
from ..core.render_guard import GUARD
from ..core.request import GenerationSettings, unavailable
from . import preferences
from .properties import to_settings

POLL_SECONDS = 0.25
# Render the passes a step per timer tick (None: where Blender has a UI, i.e. not in the background).
STEP_PASSES: bool | None = None
# How long the server may be unreachable during a job before the panel says it went away.
LOST_AFTER_SECONDS = 10.0


@dataclass
class Connection:
    checking: bool = False
    health: dict | None = None
    models: dict | None = None  # GET /v1/models (None: not asked, or a server without it)
    error: str | None = None
    url: str = ""
    thread: threading.Thread | None = None  # made by the operator, started by the timer's first call


@dataclass
class ActiveRun:
    scene_name: str  # the shot scene
    prepared: PreparedJob
    runner: JobRunner
    thread: threading.Thread
    settings: GenerationSettings  # as sent: the strip records these, not the panel's later edits
    replace_strip: str | None = None
    target_name: str = ""  # the previs scene the strip goes to


@dataclass
class PendingRun:
    """Passes rendered but not sent: some keyframes' passes are empty and the artist is asked first."""

    scene_name: str
    prepared: PreparedJob
    settings: GenerationSettings  # what the passes were made with; sent as they are
    replace_strip: str | None
    target_name: str


@dataclass
class Preparing:
    """Passes being rendered a step per timer tick (generation.prepare_steps); nothing sent yet."""

    scene_name: str
    steps: object  # the generator
    progress: object  # generation.PassProgress
    settings: GenerationSettings
    replace_strip: str | None
    target_name: str


class Status:
    """Runtime state shown by the panel; not saved in the .blend."""

    def __init__(self):
        self.connection = Connection()
        self.preparing: Preparing | None = None
        self.run: ActiveRun | None = None
        self.pending: PendingRun | None = None
        self.message = ""
        self.message_is_error = False
        self.can_resubmit = False  # the last job was lost with the server: the panel offers to send it again

    def say(self, text: str, error: bool = False) -> None:
        self.message, self.message_is_error = text, error
        print(("SparseCtrl error: " if error else "SparseCtrl: ") + text)


STATUS = Status()


def _redraw() -> None:
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type in ("SEQUENCE_EDITOR", "VIEW_3D"):
                area.tag_redraw()


def _check_connection(url: str, token: str) -> None:
    """In a thread: inside the render guard, so a Generate's renders wait for its answer (at most 3 s)."""
    c = STATUS.connection
    with GUARD.thread_segment():
        client = Client(url, token=token)
        try:
            c.health, c.error = client.health(), None
            c.models = _models(client)
        except ServerError as e:
            c.health, c.models, c.error = None, None, str(e)
        finally:
            c.checking, c.url = False, url


def _models(client: Client) -> dict | None:
    """GET /v1/models, for what the panel offers (the Look reference); None where the server cannot say."""
    try:
        return client.models()
    except ServerError:
        return None


def _started(thread: threading.Thread | None) -> bool:
    """Start a thread the operator made (the timer's first call, after the operator returned); False if it
    was only started now."""
    if thread is not None and thread.ident is None:
        thread.start()
        return False
    return True


def _poll_connection():
    if not _started(STATUS.connection.thread):
        return POLL_SECONDS
    _redraw()
    return POLL_SECONDS if STATUS.connection.checking else None


def _poll_run():
    run = STATUS.run
    if run is None:
        return None
    state = run.runner.state
    if not _started(run.thread) or run.thread.is_alive():
        _show_forming(run)
        _redraw()
        return POLL_SECONDS
    from .live_preview import LIVE

    LIVE.clear()  # the final strip takes its place; a cancel or failure leaves nothing of it
    STATUS.run = None
    STATUS.can_resubmit = state.lost
    scene = bpy.data.scenes.get(run.scene_name)
    if state.phase == "done" and scene is not None:
        from .generation import import_result
        from .strips import find_strip, previs_scene

        try:
            settings = run.settings
            target = previs_scene(scene, run.target_name or settings.preview_scene)
            replace = find_strip(target, run.replace_strip) if run.replace_strip else None
            strip = import_result(
                scene, run.prepared, state, settings, bpy.data.filepath, replace=replace, target=target
            )
            STATUS.say(f"preview added: {strip.name} on '{target.name}' (channel {strip.channel})")
        except Exception as e:  # noqa: BLE001 - the artist gets a sentence, never a traceback
            STATUS.say(f"could not add the strip: {e}", error=True)
    elif state.phase == "cancelled":
        STATUS.say("cancelled")
    else:
        STATUS.say(state.error or f"the job ended {state.phase}", error=True)
    _report(STATUS.message, STATUS.message_is_error)
    _redraw()
    return None


def _poll_prepare():
    """One pass render per tick; then the job is sent (or held: empty passes), as the operator does at once."""
    from .passes import PassError
    from .scene_keyframes import KeyframeError

    preparing = STATUS.preparing
    if preparing is None:
        return None
    try:
        next(preparing.steps)
        _redraw()
        return 0.0  # the UI's events are handled before the next tick
    except StopIteration as stop:
        STATUS.preparing = None
        _prepared(preparing.scene_name, stop.value, preparing.settings, preparing.replace_strip, preparing.target_name)
    except (KeyframeError, PassError, ValueError) as e:
        STATUS.preparing = None
        STATUS.say(str(e), error=True)
        _report(str(e), True)
    except Exception as e:  # noqa: BLE001 - a sentence, and the panel free again, never a stuck timer
        STATUS.preparing = None
        STATUS.say(f"rendering the passes failed: {type(e).__name__}: {e}", error=True)
    _redraw()
    return None


def cancel_prepare() -> bool:
    """Stop the pass renders before anything is sent: the scene copy is removed, the scene is as it was."""
    preparing, STATUS.preparing = STATUS.preparing, None
    if preparing is None:
        return False
    preparing.steps.close()
    STATUS.say("cancelled: nothing was sent")
    _redraw()
    return True


def _prepared(scene_name: str, prepared: PreparedJob, settings, replace_name, target_name: str, report=None) -> bool:
    """The passes are rendered: send them, or hold them when some are empty (the panel asks). True if sent."""
    for message in prepared.messages:
        (report or (lambda text: _report(text, False)))(message)
    if prepared.empty_frames:
        STATUS.pending = PendingRun(scene_name, prepared, settings, replace_name, target_name)
        STATUS.say(prepared.empty_message + ". Send anyway?", error=True)
        return False
    start_run(scene_name, prepared, settings, replace_name, target_name)
    return True


def _show_forming(run: ActiveRun) -> None:
    """The job's newest preview on the previs scene's Sequencer, when one came that is not shown yet."""
    from .live_preview import LIVE
    from .strips import previs_scene, shot_offset

    preview, shot = run.runner.state.preview, bpy.data.scenes.get(run.scene_name)
    if preview is None or preview[0] == LIVE.step or shot is None:
        return
    try:
        target = previs_scene(shot, run.target_name or run.settings.preview_scene)
        LIVE.show(target, shot_offset(target, shot), run.prepared, preview, run.runner.state.total)
    except Exception as e:  # noqa: BLE001 - a preview that cannot be shown never stops the job
        print(f"SparseCtrl: the preview of step {preview[0]} could not be shown: {e}")
        LIVE.step = preview[0]  # not tried again


def _report(message: str, error: bool) -> None:
    """Put a message in Blender's Info report from a timer (only operators can report)."""
    try:
        bpy.ops.sparsectrl.report(message=message, error=error)
    except (RuntimeError, AttributeError):  # no context to report into (e.g. during shutdown)
        pass


TIMERS = (_poll_connection, _poll_prepare, _poll_run)  # the prepare before the run it starts


def run_timers(timeout: float = 120.0) -> None:
    """What Blender's event loop does with the add-on's timers, for bpy as a module (scripts, tests), which has
    none: call them until the connection check and the job are over (the strip added). TimeoutError if not."""
    deadline = time.monotonic() + timeout
    pending = True
    while pending:  # all of them each round: one may start another's work (the passes rendered, the job sent)
        pending = [timer for timer in TIMERS if timer() is not None]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"the add-on's timers still run after {timeout:g} s: {STATUS.message}")
        if pending:
            time.sleep(0.02)


class SPARSECTRL_OT_check_connection(bpy.types.Operator):
    bl_idname = "sparsectrl.check_connection"
    bl_label = "Check Connection"
    bl_description = "Ask the server which model and modalities it has"

    def execute(self, context):
        url = context.scene.sparsectrl.server_url
        if STATUS.connection.checking:
            return {"CANCELLED"}  # one check at a time
        STATUS.connection.checking = True
        STATUS.connection.thread = threading.Thread(
            target=_check_connection, args=(url, preferences.token()), name="sparsectrl-check", daemon=True
        )  # started by the timer, after this returns
        if not bpy.app.timers.is_registered(_poll_connection):
            bpy.app.timers.register(_poll_connection, first_interval=0.0)
        return {"FINISHED"}


class SPARSECTRL_OT_randomize_seed(bpy.types.Operator):
    bl_idname = "sparsectrl.randomize_seed"
    bl_label = "Randomise Seed"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        context.scene.sparsectrl.seed = random.randrange(0, 2**31 - 1)
        return {"FINISHED"}


class SPARSECTRL_OT_generate(bpy.types.Operator):
    bl_idname = "sparsectrl.generate"
    bl_label = "Generate"
    bl_description = "Render the passes at the keyframes, send them to the server and add the preview strip"

    regenerate: bpy.props.BoolProperty(
        name="Regenerate", description="New seed; stack or replace per the setting", options={"SKIP_SAVE"}
    )
    retake: bpy.props.BoolProperty(
        name="Retake",
        description=(
            "Regenerate the selected take over the preview range (or In/Out) only, the rest kept frame for "
            "frame; stacked above it"
        ),
        options={"SKIP_SAVE"},
    )
    pending: bpy.props.EnumProperty(
        name="Pending",
        description="What to do with passes rendered last and held because some were empty",
        items=[
            ("NONE", "Render", "Render the passes and send them"),
            ("SEND", "Send Anyway", "Send the passes rendered last, although some keyframes' passes are empty"),
            ("DISCARD", "Discard", "Drop the passes rendered last"),
        ],
        default="NONE",
        options={"SKIP_SAVE"},
    )

    @classmethod
    def poll(cls, context):
        return STATUS.run is None and STATUS.preparing is None

    def invoke(self, context, event):
        result = self.execute(context)
        if STATUS.preparing is not None and context.window is not None:
            context.window_manager.modal_handler_add(self)  # only to hear Esc; the timer renders
            return {"RUNNING_MODAL"}
        return result

    def modal(self, context, event):
        if STATUS.preparing is None:
            return {"FINISHED"}
        if event.type == "ESC" and event.value == "PRESS":
            cancel_prepare()
            return {"CANCELLED"}
        return {"PASS_THROUGH"}

    def execute(self, context):
        if self.pending != "NONE":
            return self._pending(self.pending == "SEND")
        from ..core.reference import LookReferenceError
        from ..core.reference import unavailable as reference_unavailable
        from .generation import prepare_steps
        from .look import reference_for
        from .passes import PassError, run_steps
        from .scene_keyframes import KeyframeError
        from .strips import PlacementError, active_preview_strip, check_target, shot_scene_of

        shot = shot_scene_of(context.scene)  # the panel in a previs scene works on its shot
        props = shot.sparsectrl
        STATUS.pending = None
        try:
            target = check_target(shot, props.preview_scene)
        except PlacementError as e:
            return self._fail(str(e))
        replace, retake = None, None
        if self.retake:
            try:
                retake = retake_plan(context, shot, target)
            except ValueError as e:
                return self._fail(str(e))
            if props.retake_new_seed:
                props.seed = random.randrange(0, 2**31 - 1)
        elif self.regenerate:
            props.seed = random.randrange(0, 2**31 - 1)
            if props.regenerate_mode == "REPLACE":
                # The strip selected where the previews are (the panel may be shown in the shot or its previs).
                for scene in (context.scene, target):
                    if scene is not None and replace is None:
                        replace = active_preview_strip(scene, shot)
        health = STATUS.connection.health
        settings = to_settings(props)
        if health is not None and (why := unavailable(settings, health)):  # said before anything is rendered
            return self._fail(why)
        reference = reference_for(shot, props.preview_scene)
        if reference is not None and (why := reference_unavailable(STATUS.connection.models)):
            return self._fail(why)
        target_name = target.name if target is not None else ""
        replace_name = replace.name if replace else None
        steps = prepare_steps(shot, settings, retake, reference)
        try:
            progress = next(steps)  # the settings and keyframes checked, nothing rendered yet
            if STEP_PASSES if STEP_PASSES is not None else not bpy.app.background:
                STATUS.preparing = Preparing(shot.name, steps, progress, settings, replace_name, target_name)
                STATUS.say(f"rendering {progress.total} passes (Esc or Cancel stops before anything is sent)")
                if not bpy.app.timers.is_registered(_poll_prepare):
                    bpy.app.timers.register(_poll_prepare, first_interval=0.0)
                return {"FINISHED"}
            prepared = run_steps(steps)
        except (KeyframeError, PassError, LookReferenceError, ValueError) as e:
            return self._fail(str(e))
        sent = _prepared(shot.name, prepared, settings, replace_name, target_name, self._warn)
        return {"FINISHED"} if sent else {"CANCELLED"}

    def _warn(self, message: str) -> None:
        self.report({"WARNING"}, message)

    def _pending(self, send: bool):
        pending, STATUS.pending = STATUS.pending, None
        scene = bpy.data.scenes.get(pending.scene_name) if pending is not None else None
        if not send or scene is None:
            STATUS.say("nothing sent")
            return {"CANCELLED"}
        start_run(pending.scene_name, pending.prepared, pending.settings, pending.replace_strip, pending.target_name)
        return {"FINISHED"}

    def _fail(self, message: str):
        STATUS.say(message, error=True)
        self.report({"ERROR"}, message)
        return {"CANCELLED"}


def retake_plan(context, shot, target):
    """The Retake of the selected take (core/retake.Retake): the active preview strip where the previews are, over
    its scene's preview range, else the panel's In/Out. ValueError with a sentence for the artist."""
    from ..core.retake import plan_retake
    from .strips import active_preview_strip, previs_scene_name, take_of_strip

    strip = None
    for scene in (context.scene, target):
        if scene is not None and strip is None:
            strip = active_preview_strip(scene, shot)
    if strip is None:
        where = target.name if target is not None else previs_scene_name(shot)
        raise ValueError(f"select a take to retake first: click a preview strip on '{where}'")
    holder, props = strip.id_data, shot.sparsectrl
    if holder.use_preview_range:
        first, last = holder.frame_preview_start, holder.frame_preview_end
    elif (props.retake_in, props.retake_out) != (0, 0):
        first, last = props.retake_in, props.retake_out
    else:
        raise ValueError(
            f"choose the frames to retake: set the preview range of '{holder.name}' (Ctrl+P in the timeline) or "
            "In and Out in the panel"
        )
    return plan_retake(take_of_strip(strip, shot), first, last)


def start_run(scene_name: str, prepared: PreparedJob, settings, replace_name, target_name: str) -> None:
    client = Client(settings.server_url, token=preferences.token())
    if named := preferences.artist_name():
        prepared.body["owner"] = named
    runner = JobRunner(
        client,
        prepared.body,
        poll_seconds=POLL_SECONDS,
        lost_after=LOST_AFTER_SECONDS,
        prepare=prepared.encode,
        default_owner=None if named else preferences.owner(),  # not sent where the token names the artist
        previews=True,
    )  # the PNGs are made in the job thread: Blender's UI is not held for them
    thread = threading.Thread(target=runner.run, name="sparsectrl-job", daemon=True)  # started by the timer
    STATUS.run = ActiveRun(scene_name, prepared, runner, thread, settings, replace_name, target_name)
    if not bpy.app.timers.is_registered(_poll_run):  # without an event loop (bpy module): run_timers()
        bpy.app.timers.register(_poll_run, first_interval=0.0)
    sent = [f"{len(prepared.images)} {settings.modality} keyframes"] if prepared.images else []
    if prepared.dense_frames:
        sent.append(f"depth at {len(prepared.dense_frames)} frames")
    if prepared.reference:
        files = prepared.reference["files"]
        images = f"{len(files)} image{'s' * (len(files) > 1)}"
        sent.append(f"the Look reference of {prepared.reference['source']} ({images})")
    if (retake := prepared.retake) is not None:
        first, last = retake.timeline
        sent.append(f"a retake of frames {first}-{last} (generated {retake.frames[0]}-{retake.frames[1]})")
    STATUS.say("sent " + " and ".join(sent))


class SPARSECTRL_OT_cancel(bpy.types.Operator):
    bl_idname = "sparsectrl.cancel"
    bl_label = "Cancel"
    bl_description = "Stop the passes' renders (nothing sent), or cancel the running generation on the server"

    @classmethod
    def poll(cls, context):
        return STATUS.run is not None or STATUS.preparing is not None

    def execute(self, context):
        if cancel_prepare():
            return {"FINISHED"}
        STATUS.run.runner.cancel()
        STATUS.say("cancelling…")
        return {"FINISHED"}


class SPARSECTRL_OT_report(bpy.types.Operator):
    bl_idname = "sparsectrl.report"
    bl_label = "SparseCtrl Report"
    bl_options = {"INTERNAL"}

    message: bpy.props.StringProperty()
    error: bpy.props.BoolProperty()

    def execute(self, context):
        self.report({"ERROR" if self.error else "INFO"}, self.message)
        return {"FINISHED"}


CLASSES = (
    SPARSECTRL_OT_report,
    SPARSECTRL_OT_check_connection,
    SPARSECTRL_OT_randomize_seed,
    SPARSECTRL_OT_generate,
    SPARSECTRL_OT_cancel,
)


def cancel_on_quit() -> None:
    """Registered with atexit (Blender runs it when it quits; it never unregisters add-ons then): the job
    running is cancelled on the server, not left to run on for nobody."""
    if STATUS.run is not None and STATUS.run.runner.cancel_now():
        print(f"SparseCtrl: Blender is quitting: job {STATUS.run.runner.state.job_id} cancelled on the server")


@bpy.app.handlers.persistent
def _stop_passes_before_save(*_args) -> None:
    """A save while the passes render stops them: their temporary scene copy must not be saved."""
    if STATUS.preparing is not None:
        cancel_prepare()
        STATUS.say("saving stopped the passes' renders (nothing was sent): press Generate again", error=True)


def register_handlers() -> None:
    if _stop_passes_before_save not in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.append(_stop_passes_before_save)


def unregister_handlers() -> None:
    while _stop_passes_before_save in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.remove(_stop_passes_before_save)


def unregister_timers() -> None:
    for timer in TIMERS:
        while bpy.app.timers.is_registered(timer):  # every registration: one left makes bpy 4.2/4.5 fail at exit
            bpy.app.timers.unregister(timer)
    cancel_prepare()
    if STATUS.run is not None:
        STATUS.run.runner.cancel_now()  # the job thread's next poll may never come
        STATUS.run.runner.cancel()
        STATUS.run = None
    STATUS.pending = None
