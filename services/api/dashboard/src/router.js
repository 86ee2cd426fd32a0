// Hash routing: the API serves one page at /, and every screen has a shareable URL.
import { useEffect, useState } from "preact/hooks";

function current() {
  const hash = location.hash.replace(/^#/, "") || "/skills";
  const [path, query = ""] = hash.split("?");
  return { parts: path.split("/").filter(Boolean), query: new URLSearchParams(query) };
}

export function useRoute() {
  const [route, setRoute] = useState(current);
  useEffect(() => {
    const update = () => setRoute(current());
    addEventListener("hashchange", update);
    return () => removeEventListener("hashchange", update);
  }, []);
  return route;
}

export function navigate(path) {
  location.hash = path;
}
