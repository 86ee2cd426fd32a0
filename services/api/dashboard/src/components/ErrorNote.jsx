// An API error as the user should see it: the message and what to try.
export function ErrorNote({ error, title }) {
  if (!error) return null;
  return (
    <div class="note note-error" role="alert">
      {title && <strong>{title} </strong>}
      <span>{error.message}</span>
      {error.suggestions?.length > 0 && (
        <ul>
          {error.suggestions.map((s) => (
            <li key={s}>{s}</li>
          ))}
        </ul>
      )}
    </div>
  );
}
