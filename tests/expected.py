"""What Civica must hold after a Damstra → Civica migration, computed from the Damstra simulator's data."""

from __future__ import annotations

from typing import Any

from migrator.dates import normalize

MAPPED_LESSONS = range(101, 119)


def expected_state(damstra: Any) -> dict[str, Any]:
    data = damstra.data
    users: dict[str, Any] = {}
    user_names: dict[int, str] = {}
    for i in range(len(data)):
        u = data.user(i)
        if not u.get("firstName") or not u.get("lastName") or not u.get("userName"):
            continue  # dead-lettered: Civica requires forename and surname
        groups = {data.group(g["id"])["name"] for g in u.get("groups") or []}
        users[u["userName"]] = {
            "forename": u["firstName"],
            "surname": u["lastName"],
            "mail": u.get("emailAddress") or None,
            "employee_number": u.get("employeeNumber") or None,
            "groups": groups,
            "active": u.get("clientStatusId") != 57,
        }
        user_names[u["id"]] = u["userName"]
    awards = set()
    for i in range(len(data)):
        uid = data.user(i)["id"]
        for s in data.schedules(i):
            if s.get("status") == "completed" and s["lessonId"] in MAPPED_LESSONS and uid in user_names:
                awards.add((user_names[uid], f"CERT-{s['lessonId']}", normalize(s["lessonCompletedDate"], "d")))
    return {"users": users, "awards": awards}


def assert_target_matches(state: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every expected user and award exactly once, with the carried fields and the active flag."""
    assert set(state["users"]) == set(expected["users"]), "users in Civica differ from the valid Damstra users"
    for name, want in expected["users"].items():
        profile, groups, active = state["users"][name]
        for field in ("forename", "surname", "mail", "employee_number"):
            assert profile.get(field) == want[field], (name, field)
        assert groups == want["groups"], name
        assert active == want["active"], name
    awards = state["awards"]
    assert len(awards) == len(set(awards)), "an award was written twice"
    assert set(awards) == expected["awards"]
    assert state["duplicate_awards"] == 0
