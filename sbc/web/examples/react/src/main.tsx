import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { App } from './App';

// Where the SBC is and where your backend hands out its tokens (see ../token-express).
const SBC = 'wss://sbc.example.com/v1/operator';
const TOKEN_ENDPOINT = '/api/operator/token';

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App sbcUrl={SBC} tokenEndpoint={TOKEN_ENDPOINT} />
  </StrictMode>,
);
