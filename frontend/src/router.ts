// Three client-side routes; the server answers each path with the same index.html.
import { useEffect, useState } from "react";

export type Route = "analyse" | "worklist" | "model";
export const PATHS: Record<Route, string> = { analyse: "/", worklist: "/worklist", model: "/model" };

export function routeOf(pathname: string): Route {
  const p = pathname.replace(/\/+$/, "");
  if (p === "/worklist") return "worklist";
  if (p === "/model") return "model";
  return "analyse";
}

export function navigate(route: Route): void {
  if (routeOf(location.pathname) === route) return;
  history.pushState(null, "", PATHS[route]);
  window.dispatchEvent(new PopStateEvent("popstate"));
}

export function useRoute(): Route {
  const [route, setRoute] = useState<Route>(routeOf(location.pathname));
  useEffect(() => {
    const on = () => setRoute(routeOf(location.pathname));
    window.addEventListener("popstate", on);
    return () => window.removeEventListener("popstate", on);
  }, []);
  return route;
}
