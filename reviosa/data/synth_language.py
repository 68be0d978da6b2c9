"""Referring expressions for the synthetic world, and the check that each one is unambiguous.

Expressions are built from a bounded vocabulary (colours, shapes, sizes, textures, motions,
interaction verbs). Each candidate is checked against the scene structurally, not by parsing the
text: the set of objects its description picks out must be exactly the intended referents (and, for
interactions, the intended actor and target sets). A candidate that could also fit another object is
dropped, so the ground truth of every written expression is unique.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reviosa.data.synth_motion import BIDIRECTIONAL, DIRECTIONS, SINGLE_MOTIONS, UNIDIRECTIONAL
from reviosa.data.synth_render import COLOURS, SHAPES, SIZES, TEXTURES, Appearance

MOTION_PHRASES = {
    "still": "standing still",
    **{name: f"moving {name}" for name in DIRECTIONS},
    "bouncing": "bouncing up and down",
    "circling": "moving in circles",
    "shaking": "shaking",
}
# (active, passive) verb phrases of each unidirectional interaction.
VERBS = {
    "chase": ("chasing", "chased by"),
    "push": ("pushing", "pushed by"),
    "follow": ("following", "followed by"),
    "circle": ("circling around", "circled by"),
    "hit": ("hitting", "hit by"),
}
MUTUAL = {"bump": "bumping into each other", "orbit": "circling around each other"}
PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
}
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}
TEXTURE_WORDS = {"plain": "", "striped": "striped", "dotted": "dotted"}

assert set(VERBS) == set(UNIDIRECTIONAL) and set(MUTUAL) == set(BIDIRECTIONAL)
assert set(MOTION_PHRASES) == set(SINGLE_MOTIONS)


@dataclass(frozen=True)
class Description:
    """A noun phrase: the attributes it states (None: not stated). All None is "object"."""

    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    texture: str | None = None

    def matches(self, look: Appearance) -> bool:
        return all(
            want is None or want == have
            for want, have in (
                (self.colour, look.colour),
                (self.shape, look.shape),
                (self.size, look.size),
                (self.texture, look.texture),
            )
        )

    def words(self) -> str:
        parts = [self.size, TEXTURE_WORDS[self.texture] if self.texture else None, self.colour]
        parts.append(self.shape or "object")
        return " ".join(p for p in parts if p)

    def plural_words(self, count: int) -> str:
        noun = PLURALS[self.shape] if self.shape else "objects"
        parts = [
            NUMBERS[count],
            self.size,
            TEXTURE_WORDS[self.texture] if self.texture else None,
            self.colour,
            noun,
        ]
        return " ".join(p for p in parts if p)


@dataclass
class SceneFacts:
    """What the language checker knows about a clip: looks, motion labels and relations."""

    looks: list[Appearance]
    motions: list[set[str]]  # per object: the motion labels it could be described by
    single_motion: list[str | None]  # per object: its planned single motion (None: interaction participant)
    relations: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, actor, target)
    mutual: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, a, b), symmetric

    def pick(self, desc: Description, motion: str | None = None) -> set[int]:
        return {
            i
            for i, look in enumerate(self.looks)
            if desc.matches(look) and (motion is None or motion in self.motions[i])
        }


@dataclass(frozen=True)
class Candidate:
    """An expression with its ground truth (object indices) and caption type."""

    text: str
    caption_type: str
    subject: tuple[int, ...]
    object: tuple[int, ...] = ()
    level: str = "appearance"  # appearance | class | motion | both: how the referent is named


def describe(index: int, facts: SceneFacts, rng) -> Description:
    """The appearance phrase for one object: colour and shape, plus size or texture when another object
    shares colour and shape (and sometimes anyway, for variety). Look-alikes stay ambiguous."""
    look = facts.looks[index]
    desc = Description(colour=look.colour, shape=look.shape)
    twins = [o for i, o in enumerate(facts.looks) if i != index and desc.matches(o)]
    if twins and any(o.size != look.size for o in twins):
        desc = Description(look.colour, look.shape, size=look.size)
    elif twins and any(o.texture != look.texture for o in twins):
        desc = Description(look.colour, look.shape, texture=look.texture)
    elif rng.random() < 0.2:
        extra = rng.choice(["size", "texture"])
        if extra == "size":
            desc = Description(look.colour, look.shape, size=look.size)
        elif look.texture != "plain":
            desc = Description(look.colour, look.shape, texture=look.texture)
    return desc


def _class_of(index: int, facts: SceneFacts) -> Description:
    return Description(shape=facts.looks[index].shape)


def single_candidates(facts: SceneFacts, rng) -> list[Candidate]:
    """One-object expressions by appearance, by motion only, and by both."""
    out = []
    for i in range(len(facts.looks)):
        desc = describe(i, facts, rng)
        if facts.pick(desc) == {i}:
            out.append(Candidate(f"the {desc.words()}", "single", (i,), level="appearance"))
        motion = facts.single_motion[i]
        if motion is None:
            continue
        phrase = MOTION_PHRASES[motion]
        if facts.pick(Description(), motion) == {i}:
            out.append(Candidate(f"the object {phrase}", "single", (i,), level="motion"))
        if facts.pick(desc, motion) == {i} and facts.pick(desc) != {i}:
            # Appearance + motion where appearance alone is not enough (look-alikes): needs the video.
            out.append(Candidate(f"the {desc.words()} {phrase}", "single", (i,), level="both"))
        elif facts.pick(desc, motion) == {i} and rng.random() < 0.5:
            out.append(Candidate(f"the {desc.words()} {phrase}", "single", (i,), level="both"))
    return out


def multi_candidates(facts: SceneFacts) -> list[Candidate]:
    """Several objects named together ("the two squares moving left"): one union mask."""
    out, seen = [], set()
    for i, look in enumerate(facts.looks):
        options = [
            (Description(shape=look.shape), None, "class"),
            (Description(colour=look.colour), None, "appearance"),
            (Description(colour=look.colour, shape=look.shape), None, "appearance"),
        ]
        if facts.single_motion[i] is not None:
            motion = facts.single_motion[i]
            options += [(Description(shape=look.shape), motion, "both"), (Description(), motion, "motion")]
        for desc, motion, level in options:
            group = facts.pick(desc, motion)
            key = tuple(sorted(group))
            # Every member must really have that planned motion, not only possibly fit it.
            if (
                len(group) < 2
                or key in seen
                or (motion and any(facts.single_motion[j] != motion for j in group))
            ):
                continue
            seen.add(key)
            text = f"the {desc.plural_words(len(group))}" + (f" {MOTION_PHRASES[motion]}" if motion else "")
            out.append(Candidate(text, "multi", key, level=level))
    return out


def _roles(
    facts: SceneFacts, kind: str, d_actor: Description, d_target: Description
) -> tuple[set[int], set[int]]:
    """Actor and target sets that "<d_actor> <kind> <d_target>" picks out in the scene."""
    pairs = [
        (a, b)
        for k, a, b in facts.relations
        if k == kind and d_actor.matches(facts.looks[a]) and d_target.matches(facts.looks[b])
    ]
    return {a for a, _ in pairs}, {b for _, b in pairs}


def unidirectional_candidates(facts: SceneFacts, rng) -> list[Candidate]:
    """Active ("red circle pushing the blue square": actor = circle) and passive ("blue square pushed by
    the red circle": actor = square) forms, at appearance, class and motion-only level."""
    out = []
    for kind, a, b in facts.relations:
        active, passive = VERBS[kind]
        if rng.random() < 0.5:
            passive = "being " + passive
        levels = [
            ("appearance", describe(a, facts, rng), describe(b, facts, rng), "the"),
            ("class", _class_of(a, facts), _class_of(b, facts), "a"),
            ("motion", Description(), Description(), "another"),
        ]
        for level, d_a, d_b, article in levels:
            if _roles(facts, kind, d_a, d_b) != ({a}, {b}):
                continue
            out.append(
                Candidate(
                    f"{d_a.words()} {active} {article} {d_b.words()}", "unidirectional", (a,), (b,), level
                )
            )
            out.append(
                Candidate(
                    f"{d_b.words()} {passive} {article} {d_a.words()}", "unidirectional", (b,), (a,), level
                )
            )
    return out


def bidirectional_candidates(facts: SceneFacts, rng) -> list[Candidate]:
    """Mutual interactions ("circles bumping into each other"): one mask, the union of both."""
    out = []
    for kind, a, b in facts.mutual:
        phrase = MUTUAL[kind]
        d_a, d_b = describe(a, facts, rng), describe(b, facts, rng)
        c_a, c_b = _class_of(a, facts), _class_of(b, facts)
        forms = [
            ("appearance", d_a, d_b, f"{d_a.words()} and {d_b.words()} {phrase}"),
            ("motion", Description(), Description(), f"two objects {phrase}"),
        ]
        if c_a == c_b:
            forms.append(("class", c_a, c_b, f"{PLURALS[c_a.shape]} {phrase}"))
        else:
            forms.append(("class", c_a, c_b, f"a {c_a.words()} and a {c_b.words()} {phrase}"))
        for level, x, y, text in forms:
            members = {
                i
                for k, p, q in facts.mutual
                if k == kind
                and (
                    (x.matches(facts.looks[p]) and y.matches(facts.looks[q]))
                    or (x.matches(facts.looks[q]) and y.matches(facts.looks[p]))
                )
                for i in (p, q)
            }
            if members == {a, b}:
                out.append(Candidate(text, "bidirectional", (a, b), level=level))
    return out


def corpus() -> list[str]:
    """Every word and phrase template the world can produce, rendered with each vocabulary item once;
    deterministic (sorted). Used to train a tokenizer for the built-in model."""
    phrases: set[str] = set()
    nouns = [Description(c, s) for c in COLOURS for s in SHAPES]
    nouns += (
        [Description(shape=s) for s in SHAPES] + [Description(colour=c) for c in COLOURS] + [Description()]
    )
    nouns += [Description(shape="circle", size=z) for z in SIZES]
    nouns += [Description(shape="square", texture=t) for t in TEXTURES]
    for d in nouns:
        phrases.add(f"the {d.words()}")
        phrases.update(f"the {d.plural_words(n)}" for n in NUMBERS)
    for phrase in MOTION_PHRASES.values():
        phrases.add(f"the object {phrase}")
        phrases.add(f"the two objects {phrase}")
    for active, passive in VERBS.values():
        phrases.add(f"red circle {active} the blue square")
        phrases.add(f"blue square {passive} the red circle")
        phrases.add(f"blue square being {passive} the red circle")
        phrases.add(f"circle {active} a square")
        phrases.add(f"object {active} another object")
        phrases.add(f"object {passive} another object")
    for phrase in MUTUAL.values():
        phrases.update({f"circles {phrase}", f"two objects {phrase}", f"a circle and a square {phrase}"})
        phrases.add(f"red circle and blue square {phrase}")
    return sorted(phrases)
