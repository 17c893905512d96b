"""Statistics at the desk: plots (server-rendered SVG) with their numbers, and every table as a
CSV or XLSX download over the same period and library."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from bot.desk import USER, desk_of, render, signed_in, translator
from bot.desk.svg import chart, hbars
from bot.desk.views import STAFF, period
from services import desk_stats, tables


def routes(app: web.Application) -> None:
    app.router.add_get("/stats", page)
    app.router.add_get("/stats/{table:[a-z_]+}.{fmt:csv|xlsx}", download)


async def _load(request: web.Request) -> desk_stats.Stats:
    desk = desk_of(request)
    user = request[USER]
    library = request.query.get("library", "")[:32] or None
    scope = await desk_stats.scope_for(desk.app.db, user.actor, library)
    today = desk.app.deps.clock.today(scope.timezone)
    start, end = period(request, today)
    return await desk_stats.statistics(desk.app.db, user.actor, start, end, library=library, today=today)


@signed_in(STAFF)
async def page(request: web.Request) -> web.StreamResponse:
    desk = desk_of(request)
    t = translator(request)
    st = await _load(request)
    query = urlencode({"from": st.start.isoformat(), "to": st.end.isoformat(), "library": st.scope.code})
    day_labels = [t.date(d, "d/M") for d, _ in st.loans_per_day]
    plots = {
        "loans_per_day": chart("bar", [(d.isoformat(), n) for d, n in st.loans_per_day], chart_id="plot-loans",
                               title=t("desk.plot_loans_per_day"), short_labels=day_labels),
        "loans_per_week": chart("bar", [(d.isoformat(), n) for d, n in st.loans_per_week], chart_id="plot-weeks",
                                title=t("desk.plot_loans_per_week"),
                                short_labels=[t.date(d, "d/M") for d, _ in st.loans_per_week]),
        "visits_per_day": chart("bar", [(d.isoformat(), n) for d, n in st.visits_per_day], chart_id="plot-visits",
                                title=t("desk.plot_visits_per_day"), short_labels=day_labels),
        "overdue_per_day": chart("line", [(d.isoformat(), n) for d, n in st.overdue_per_day],
                                 chart_id="plot-overdue", title=t("desk.plot_overdue"), short_labels=day_labels),
        "active_by_class": hbars(st.active_by_class[:25], chart_id="plot-classes", title=t("desk.plot_by_class")),
        "active_by_grade": hbars(st.active_by_grade, chart_id="plot-grades", title=t("desk.plot_by_grade")),
        "top_titles": hbars(st.top_titles, chart_id="plot-titles", title=t("desk.plot_top_titles")),
        "top_subjects": hbars(st.top_subjects, chart_id="plot-subjects", title=t("desk.plot_top_subjects")),
    }
    choices = await desk_stats.libraries(desk.app.db, request[USER].actor)
    return render(request, "stats.html", st=st, plots=plots, query=query, tables=desk_stats.TABLES,
                  choices=choices, admin=request[USER].role.value == "admin")


def _cells(table: str, row: tuple, t) -> list[object]:
    if table == "reflections":
        return [t(f"desk.status_{row[0]}"), row[1]]
    return list(row)


@signed_in(STAFF)
async def download(request: web.Request) -> web.StreamResponse:
    table, fmt = request.match_info["table"], request.match_info["fmt"]
    if table not in desk_stats.TABLES:
        raise web.HTTPNotFound()
    t = translator(request)
    st = await _load(request)
    columns, rows_of = desk_stats.TABLES[table]
    headers = [t(key) for key in columns]
    rows = [_cells(table, row, t) for row in rows_of(st)]
    name = f"{table}_{st.scope.code}_{st.start.isoformat()}_{st.end.isoformat()}"
    if fmt == "csv":
        body, ctype = tables.to_csv(headers, rows), "text/csv"
    else:
        body = tables.to_xlsx(headers, rows, sheet=table)
        ctype = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return web.Response(body=body, content_type=ctype,
                        headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'})
