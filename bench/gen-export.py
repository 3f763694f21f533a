#!/usr/bin/env python3
"""Generate a realistic HR export: hard names, homonyms, a management tree.

    bench/gen-export.py N [--seed S] [--churn PCT --from FILE] > export.csv

With --churn, FILE (an export made by this script) is changed: PCT% of the people are touched
(joiners, leavers, title/department/manager/surname changes), deterministically for a seed.
"""
import argparse
import csv
import random
import sys

GIVEN = ["Anna", "Zoë", "Łukasz", "Jürgen", "José", "Siobhán", "Đorđe", "Ægir", "François", "Chloé",
         "Björn", "Søren", "Agnieszka", "Élodie", "Çağla", "Kenji", "Ana", "André", "Aoife", "Tomás",
         "Li", "Wei", "Marie-Claire", "Renée", "Oğuz", "Þórunn", "Dana", "Ewa", "Ólafur", "Käthe",
         "Rafał", "Yusuf", "John", "Jane", "Mary", "Mark", "Peter", "Владимир", "Σωκράτης", "Nguyễn"]
SURNAMES = ["Smith", "Müller", "Ørsted", "Żółć", "O'Brien", "García Márquez", "Šćepanović", "Lefèvre, Jr.",
            "D'Aubigné", "Щукин", "Παπαδόπουλος", "Văn An", "Åkesson", "Hoffmann", "Kierkegaard",
            "Brzęczyszczykiewicz", "de la Tour", "van der Berg", "Yıldırım", "Núñez", "Ní Bhriain",
            "Guðmundsdóttir", "Lee", "Nowak", "Al-Farsi", "Kollwitz", "Wójcik", "Silva", "Li", "Watanabe",
            "Smith-Jones", "Ó Súilleabháin", "Dupont", "Fontaine", "Kaya", "Arnalds", "Zellweger", "Ronan"]
TITLES = ["Engineer", "Senior Engineer", "Manager", "Analyst", "Designer", "Accountant", "Recruiter",
          "Support Engineer", "Product Manager", "Director", "Intern", "Architect"]
DEPTS = ["Engineering", "Operations", "Finance", "Sales", "Product", "People", "Legal"]
HEADER = ["employee_id", "given_name", "preferred_name", "surname", "title", "department", "email", "manager_id",
          "location", "start_date", "end_date"]
LOCATIONS = ["Berlin", "Paris", "Oslo", "Lisbon"]


def person(rng, key, managers):
    g = rng.choice(GIVEN)
    s = rng.choice(SURNAMES)
    return {
        "employee_id": str(key),
        "given_name": g,
        "preferred_name": rng.choice(["", "", "", "", "Sam", "Alex"]),
        "surname": s,
        "title": rng.choice(TITLES),
        "department": rng.choice(DEPTS),
        "email": "",
        "manager_id": str(rng.choice(managers)) if managers else "",
        "location": rng.choice(LOCATIONS),
        "start_date": "2025-%02d-%02d" % (rng.randint(1, 12), rng.randint(1, 28)),
        "end_date": rng.choice([""] * 9 + ["2026-%02d-%02d" % (rng.randint(1, 6), rng.randint(1, 28))]),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--churn", type=float, default=0.0)
    ap.add_argument("--from", dest="src")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    if a.src:
        rows = list(csv.DictReader(open(a.src, encoding="utf-8")))
        keys = [int(r["employee_id"]) for r in rows]
        managers = sorted({int(r["manager_id"]) for r in rows if r["manager_id"]})
        touched = rng.sample(range(len(rows)), int(len(rows) * a.churn / 100))
        leavers = set()
        for i in touched:
            kind = rng.choice(["leave", "title", "dept", "manager", "surname", "join"])
            r = rows[i]
            if kind == "leave" and int(r["employee_id"]) not in managers:
                leavers.add(i)
            elif kind == "title":
                r["title"] = rng.choice(TITLES)
            elif kind == "dept":
                r["department"] = rng.choice(DEPTS)
            elif kind == "manager" and r["manager_id"]:
                r["manager_id"] = str(rng.choice(managers))
            elif kind == "surname":
                r["surname"] = rng.choice(SURNAMES)
            else:
                rows.append(person(rng, max(keys) + 1, managers))
                keys.append(max(keys) + 1)
        rows = [r for i, r in enumerate(rows) if i not in leavers]
    else:
        rows = []
        managers = []
        for k in range(1, a.n + 1):
            key = 100000 + k
            rows.append(person(rng, key, managers[-50:]))
            if k <= 10 or rng.random() < 0.08:
                managers.append(key)
    w = csv.DictWriter(sys.stdout, HEADER, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)


main()
